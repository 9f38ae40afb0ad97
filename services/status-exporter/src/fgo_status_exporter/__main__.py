from fgo_status_exporter.main import main

raise SystemExit(main())
