from sam_cache.cli.main import main

main()
