from smx.cli import main

main()
