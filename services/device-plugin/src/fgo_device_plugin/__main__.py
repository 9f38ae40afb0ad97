from fgo_device_plugin.main import main

raise SystemExit(main())
