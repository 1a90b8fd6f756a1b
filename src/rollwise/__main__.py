from rollwise.cli.entry import main

main()
