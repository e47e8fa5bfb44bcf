from ghitwork.app.entry import main

raise SystemExit(main())
