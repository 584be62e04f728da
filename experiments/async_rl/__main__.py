from experiments.async_rl.cli import main

raise SystemExit(main())
