"""The `rollwise` command line: thin — parse, call the controller, render."""
