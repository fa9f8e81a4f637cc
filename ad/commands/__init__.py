"""What each `ad` command runs. ad/cli.py parses the arguments and imports only the module of the
command it runs (ad/cli.py COMMANDS), so that JAX and TensorFlow load for the commands that use them."""
