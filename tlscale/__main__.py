from tlscale.cli import main

main()
