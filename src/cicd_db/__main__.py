from cicd_db.entry import main

raise SystemExit(main())
