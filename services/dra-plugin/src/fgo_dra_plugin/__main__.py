from fgo_dra_plugin.main import main

raise SystemExit(main())
