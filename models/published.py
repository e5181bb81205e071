"""Models written by the published code: DADH's GEN_module.pth and AGAH's AGAH.pth, recognised by
their parameter names and renamed (and reshaped) to this project's modules, so that `test` and
everything else that calls a method's load_best reads them as its own.

DADH (gen_model.py of the published code): `image_module`, `text_module` (the same Linear, BatchNorm,
ReLU (, Dropout) sequence as models.gen_model.mlp, so the same indices), `hash_module.image`,
`hash_module.text`. Its feature-file generator only: the published GEN has its CNN-F commented out.

AGAH (models/AGAH.py of the published code): every layer is a Conv2d. `img_module` is CNN-F with
the same layer indices as models.cnn_f.CNNF.features (0 to 19), then index 20, a 1x1 convolution
4096 -> emb_dim; `txt_module` 0, 2, 4 are convolutions whose kernels span the whole input (linear
layers); `hash_module.img|txt.0` and `classifier.img|txt.0` are 1x1 convolutions;
`img_discriminator` and `txt_discriminator` are the critics, which codes do not need.
"""
from utils.errors import UserError


def model_path(method, run_dir):
    """The model of `method` (a class of models.METHODS) in `run_dir`: this project's file, or the
    published code's file (its PUBLISHED_FILE) when only that one is there."""
    own = run_dir / method.MODEL_FILE
    published = run_dir / method.PUBLISHED_FILE if method.PUBLISHED_FILE else own
    return published if not own.exists() and published.exists() else own


def dadh_state(state, gen, path):
    """`state` with this project's names of models.gen_model.GEN, from the published names if it
    has them."""
    if not any(k.startswith(('image_module.', 'text_module.', 'hash_module.')) for k in state):
        return state
    if len(gen.image_net) != len(gen.text_net):  # CNN-F goes first in the image net
        raise UserError(f'{path}: a generator of the published DADH code, which works on image '
                        'features; this data holds raw images')
    renames = (('image_module.', 'image_net.'), ('text_module.', 'text_net.'),
               ('hash_module.image.', 'image_hash.'), ('hash_module.text.', 'text_hash.'))
    print(f'{path}: a model of the published DADH code; its names are mapped to this project\'s '
          f'({", ".join(f"{a[:-1]} -> {b[:-1]}" for a, b in renames)})')
    return {next((b + k[len(a):] for a, b in renames if k.startswith(a)), k): v
            for k, v in state.items()}


def agah_state(state, net, path):
    """`state` with this project's names of models.agah.AGAHNet, from the published names (Conv2d
    weights reshaped to Linear ones) if it has them; the critics and, on image features, CNN-F's
    layers are left out (the critics do not make codes; features have CNN-F already applied)."""
    if not any(k.startswith(('img_module.', 'txt_module.')) for k in state):
        return state
    has_cnn = len(net.image_net) == 3
    first_linear = 1 if has_cnn else 0
    renames = {'txt_module.': 'text_net.', 'hash_module.img.': 'image_hash.',
               'hash_module.txt.': 'text_hash.', 'classifier.img.0.': 'image_classifier.',
               'classifier.txt.0.': 'text_classifier.', 'img_module.20.': f'image_net.{first_linear}.'}
    mapped, left_out = {}, set()
    for name, value in state.items():
        prefix = next((a for a in renames if name.startswith(a)), None)
        if prefix:
            # A Conv2d whose kernel spans its whole input is a Linear: out x (in * kh * kw).
            mapped[renames[prefix] + name[len(prefix):]] = (value.reshape(len(value), -1)
                                                            if name.endswith('weight') else value)
        elif name.startswith('img_module.') and has_cnn:
            mapped['image_net.0.features.' + name[len('img_module.'):]] = value
        else:
            left_out.add(name.split('.')[0] if 'discriminator' in name else 'CNN-F')
    print(f'{path}: a model of the published AGAH code; its Conv2d layers are mapped to this '
          f'project\'s modules' + (f' ({" and ".join(sorted(left_out))} not needed for codes here)'
                                   if left_out else ''))
    return mapped
