from apbd.runner.main import main

raise SystemExit(main())
