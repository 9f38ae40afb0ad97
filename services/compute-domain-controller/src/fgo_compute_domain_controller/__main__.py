from fgo_compute_domain_controller.main import main

raise SystemExit(main())
