from vision_client.cli import main

raise SystemExit(main())
