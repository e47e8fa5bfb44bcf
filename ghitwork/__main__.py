from ghitwork.cli import main

raise SystemExit(main())
