"""python -m medgpt.data inspect data=<name> model=<name> [stage=<name>]: see medgpt.data.inspect."""
from medgpt.data.inspect import main

if __name__ == "__main__":
    main()
