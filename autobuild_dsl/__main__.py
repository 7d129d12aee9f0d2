from autobuild_dsl.cli import main

main()
