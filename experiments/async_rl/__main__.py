from experiments.async_rl.cli import main

# Guarded: vLLM starts its engine core in a spawned process, which re-imports the main module.
if __name__ == "__main__":
    raise SystemExit(main())
