from cartd.cli import main

raise SystemExit(main())
