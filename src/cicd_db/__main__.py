from cicd_db.cli import main

raise SystemExit(main())
