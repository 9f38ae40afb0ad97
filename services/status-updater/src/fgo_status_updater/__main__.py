from fgo_status_updater.main import main

raise SystemExit(main())
