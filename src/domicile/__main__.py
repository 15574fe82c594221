from domicile.cli.main import main

main()
