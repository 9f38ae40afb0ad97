from fgo_kwok_dra_plugin.main import main

raise SystemExit(main())
