from voxgate.cli import main

main()
