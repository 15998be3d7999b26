"""Image files: header checks before decoding, decode/encode (16-bit PNG too), folders of images."""
