"""Built-in models: echo, words, speech."""
