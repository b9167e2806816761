from bird_jax_demo.run import main

main()
