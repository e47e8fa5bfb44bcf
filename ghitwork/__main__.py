from ghitwork.entry import main

raise SystemExit(main())
