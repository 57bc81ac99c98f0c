from humanaes.cli import main

main()
