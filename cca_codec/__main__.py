"""``python -m cca_codec``: run the ccacodec command line."""
from cca_codec.cli import main

if __name__ == "__main__":
    main()
