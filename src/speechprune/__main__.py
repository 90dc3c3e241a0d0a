from speechprune.cli import main

main()
