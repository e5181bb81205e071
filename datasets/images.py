"""Image files to CNN-F's input: decode with Pillow, convert to RGB, resize to 224 x 224, and lay out
as the raw-image path stores images (SPEC §2): 3 x W x H uint8, MATLAB's H x W x 3 axis-reversed.

Used by `prepare` (features and `--images raw`) and by image queries at search time: one pipeline.
Resizing: Pillow's bicubic filter on the whole image to exactly 224 x 224 (aspect ratio not kept,
no crop), with its support widened when shrinking, which is how MATLAB's `imresize(im, [224 224])`
(bicubic, antialiasing on) of the DCMH/MatConvNet pipeline resizes; the result is rounded to uint8
as the images of DCMH's raw-image file are.
"""
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, UnidentifiedImageError

from utils.errors import UserError

IMAGE_SIZE = 224


class BadImage(UserError):
    """An image file that is missing, truncated or not an image."""


def to_rgb(image):
    """Grey, palette, CMYK, 16-bit and alpha images as 8-bit RGB (alpha dropped, as MATLAB's imread
    returns the colour channels only)."""
    if image.mode == 'RGB':
        return image
    if image.mode in ('I;16', 'I;16B', 'I;16L', 'I'):
        grey = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith('I;16') else max(float(grey.max()), 1.0)
        image = Image.fromarray(np.clip(grey / top * 255 + 0.5, 0, 255).astype(np.uint8))
    if image.mode == 'P' and 'transparency' in image.info:
        image = image.convert('RGBA')
    return image.convert('RGB')


def load_image(path):
    """The image file at `path` as a 3 x 224 x 224 (channels x width x height) uint8 array."""
    try:
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not later
            rgb = to_rgb(image).resize((IMAGE_SIZE, IMAGE_SIZE), Image.BICUBIC)
    except FileNotFoundError:
        raise BadImage(f'{path}: no such image file') from None
    except UnidentifiedImageError:
        raise BadImage(f'{path}: not an image Pillow can read') from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadImage(f'{path}: cannot decode the image ({e})') from None
    return np.asarray(rgb).transpose(2, 1, 0)  # H x W x 3 -> 3 x W x H


def load_images(paths, workers=2, ahead=256, errors='raise'):
    """Yield (path, image or the BadImage) for each path in order, decoding up to `ahead` images in
    `workers` threads ahead of the consumer (Pillow releases the GIL while it decodes and resizes),
    so memory stays bounded whatever the number of paths. errors='raise' raises the first BadImage;
    errors='yield' hands it over in place of the image."""
    def decode(path):
        try:
            return load_image(path)
        except BadImage as e:
            return e

    paths = iter(paths)
    with ThreadPoolExecutor(workers) as pool:
        pending = []
        for path in paths:
            pending.append((path, pool.submit(decode, path)))
            if len(pending) >= ahead:
                yield _take(pending, errors)
        while pending:
            yield _take(pending, errors)


def _take(pending, errors):
    path, future = pending.pop(0)
    result = future.result()
    if isinstance(result, BadImage) and errors == 'raise':
        raise result
    return path, result
