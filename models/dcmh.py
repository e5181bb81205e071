"""DCMH (Jiang & Li, CVPR 2017; SPEC-DCMH.md) as its official MATLAB code computes it: the objective
and its hand gradient (§4), the networks (§3), the schedule (§5), behind the method interface of
models/method.py. Rows are samples: F, G, B are N x c (the MATLAB code stores their transposes).
"""
import functools
import math

import torch
from torch import nn
from torch.nn.functional import softplus

from models.method import Method, encode_in_batches, random_batches, run_steps
from models.published import model_path
from utils.checkpoint import atomic_save, load_module
from utils.distributed import SOLO
from utils.phases import phase

WEIGHT_DECAY = 5e-4
CHUNK_ROWS = 256  # rows of Θ = ½FGᵀ (and of S) computed at a time: 256 x N values, in cache


def similarity(labels, other):
    """S = [L Lᵀ > 0] between two sets of label rows (SPEC-DCMH §2), as bool, a chunk of rows at a
    time (the float products of all N² pairs would take 4 N² bytes)."""
    return torch.cat([labels[s:s + CHUNK_ROWS] @ other.T > 0 for s in range(0, len(labels), CHUNK_ROWS)])


def objective(S, F, G, B, gamma, eta):
    """J of SPEC-DCMH §4 over all N² pairs (self-pairs (SPEC-DCMH §7): i = j included):
    Σ_ij [log(1 + e^Θ_ij) − S_ij Θ_ij] + γ(‖F − B‖² + ‖G − B‖²) + η(‖Fᵀ1‖² + ‖Gᵀ1‖²), Θ = ½FGᵀ,
    a chunk of rows of Θ at a time, chunk sums added in float64. S: N x N, bool or 0/1 of any dtype."""
    likelihood = 0.0
    for s in range(0, len(F), CHUNK_ROWS):
        theta = 0.5 * F[s:s + CHUNK_ROWS] @ G.T
        # log(1 + e^Θ) − Θ = log(1 + e^−Θ): where S = 1 the term is softplus(−Θ), so the chunk's
        # terms are softplus(±Θ) (no cancellation), the sign flipped in place
        sign = S[s:s + CHUNK_ROWS].to(torch.int8).mul_(-2).add_(1)
        likelihood += softplus(theta.mul_(sign)).sum().double()
    squares = lambda x: (x.double() ** 2).sum()
    return (likelihood + gamma * (squares(F - B) + squares(G - B))
            + eta * (squares(F.sum(0)) + squares(G.sum(0))))


def batch_gradient(S, own, other, B, index, gamma, eta):
    """g = ∂J/∂own_b with `other`, B and own's other rows constant (SPEC-DCMH §4), unscaled; b =
    `index`, own_b already written. Image step: own = F, other = G:
    g = ½(σ(½ F_b Gᵀ) − S_b) G + 2γ(F_b − B_b) + 2η 1_n(1ᵀF); the text step swaps F and G (S is
    symmetric). hand-gradient (SPEC-DCMH §7): the formula, as the code writes it."""
    own_b = own[index]
    # stale-rows (SPEC-DCMH §7): Gᵀ and 1ᵀF run over all N rows, most from earlier steps
    residual = (0.5 * own_b @ other.T).sigmoid_().sub_(S[index].to(own.dtype))  # σ(Θ_b) − S_b
    return (residual @ other).mul_(0.5) + 2 * gamma * (own_b - B[index]) + 2 * eta * own.sum(0)


def update_codes(F, G, gamma):
    """B = sign(γ(F + G)) (SPEC-DCMH §5). gamma-in-sign (SPEC-DCMH §7): γ > 0 changes nothing.
    sign-zero (SPEC-DCMH §7): sign(0) = 0, so B is 0 on rows neither net has drawn yet."""
    return torch.sign(gamma * (F + G))


def epoch_lr(lr, lr_end, epoch, max_epoch):
    """logspace-lr (SPEC-DCMH §7): lr of 0-based epoch `epoch` of E = max_epoch, MATLAB's
    logspace(log10 lr, log10 lr_end, E), geometric from lr to lr_end (E = 1 gives lr_end); after
    epoch E (what end_epoch of the last epoch asks for) it stays lr_end."""
    if max_epoch == 1:
        return lr_end
    a, b = math.log10(lr), math.log10(lr_end)
    return 10 ** (a + (b - a) * min(epoch, max_epoch - 1) / (max_epoch - 1))


def normal_init(module):
    """Every weight and bias ~ 0.01·N(0, 1) (SPEC-DCMH §3), not PyTorch's default."""
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.01)
    return module


class DCMHNet(nn.Module):
    """Image net: CNN-F through relu7 (matconvnet-cnnf (SPEC-DCMH §7): MatConvNet's geometry, every
    layer fine-tuned) then fc8 = Linear(4096, c); on feature files fc8 alone (DCMH-I). Text net:
    Linear(d, 8192), ReLU, Linear(8192, c). linear-out (SPEC-DCMH §7): no tanh, no BN, unbounded."""

    def __init__(self, image_dim, text_dim, bit, cnn=None):
        super().__init__()
        # vgg-net-file (SPEC-DCMH §7): the code overwrites layer 20 of vgg_net.mat, which the repo
        # does not ship; here fc8 is a new layer after the imagenet-vgg-f.mat CNN-F
        fc8 = normal_init(nn.Linear(cnn.out_dim if cnn else image_dim, bit))
        self.image_net = nn.Sequential(cnn, fc8) if cnn else nn.Sequential(fc8)
        self.text_net = normal_init(nn.Sequential(nn.Linear(text_dim, 8192), nn.ReLU(inplace=True),
                                                  nn.Linear(8192, bit)))


class DCMH(Method):
    NAME = 'dcmh'
    MODEL_FILE = 'DCMH_module.pth'
    OPTIONS = {
        'lr': (10 ** -1.5, 'learning rate of epoch 1, both nets; geometric to lr_end at epoch '
                           'max_epoch (SPEC-DCMH §1: logspace(-1.5, -3, E))'),
        'lr_end': (1e-3, 'learning rate of epoch max_epoch (SPEC-DCMH §1)'),
        'gamma': (1.0, 'quantisation weight γ (SPEC-DCMH §4)'),
        'eta': (1.0, 'bit-balance weight η (SPEC-DCMH §4)'),
    }
    # last-epoch (SPEC-DCMH §7): no validation, the model after epoch E is the result (§6)
    DEFAULTS = dict(max_epoch=500, valid=False, select_on='last')
    # SPEC-DCMH §2: query 2000 of a random permutation, the rest the database, training its first
    # 10000; --split rows: the TF demo's (AGAH's) fixed rows, queries first. NUS-WIDE: the paper's
    # 2100 queries and 10500 training rows, as it is cited (no script in the code).
    DATA_DEFAULTS = {'mir': dict(query_size=2000, db_size=18015, layout='query_first'),
                     'nus': dict(query_size=2100, db_size=None, training_size=10500)}
    # The demo's synthetic 4096-d features have ‖mean row‖² ≈ 1800: at 10^-1.5 the bit-balance term's
    # step (curvature 2η·n‖x̄‖²/N) overshoots and fc8 diverges, so the demo runs at a constant 0.01.
    DEMO = dict(query_size=500, bit=32, max_epoch=10, lr=0.01, lr_end=0.01)
    PUBLISHED = (
        ('flickr25k', 'DCMH', 'DCMH paper', (0.7410, 0.7465, 0.7485), (0.7827, 0.7900, 0.7932)),
        ('nus-wide', 'DCMH', 'DCMH paper', (0.5903, 0.6031, 0.6093), (0.6389, 0.6511, 0.6571)),
        ('iapr-tc12', 'DCMH', 'DCMH paper', (0.4526, 0.4732, 0.4844), (0.5185, 0.5378, 0.5468)),
    )  # and its rows as DADH's and AGAH's tables print them: models/dadh.py
    SPLIT = 'random'  # no-seed-split (SPEC-DCMH §7): drawn from --seed here, saved with the run
    CNN_GEOMETRY = 'matconvnet'  # matconvnet-cnnf (SPEC-DCMH §7): LRN window 5, pool1 27 x 27
    SUBTRACT_AVERAGE_IMAGE = True  # pixels less averageImage, nothing else (SPEC-DCMH §2)
    CENTRE_TEXT = True  # text-centred (SPEC-DCMH §7): the data layer subtracts column means of all rows
    STANDARDISE_FEATURES = False  # DCMH-I: fc8 sees the stored relu7 features as they are

    def __init__(self, num_train, device, cnn=None, *, image_dim, text_dim, bit, batch_size,
                 max_epoch, lr, lr_end, gamma, eta, amp=None):
        if cnn is None:
            print('--model dcmh on image features: DCMH-I (SPEC-DCMH §2), fc8 alone on the stored '
                  'features, an approximation of the raw-image method (CNN-F not fine-tuned; the '
                  "features come from the file makers' pipeline)")
        self.num_train, self.device, self.batch_size = num_train, device, batch_size
        self.max_epoch, self.lr_start, self.lr_end = max_epoch, lr, lr_end
        self.gamma, self.eta = gamma, eta
        self.net = DCMHNet(image_dim, text_dim, bit, cnn).to(device)
        # grad-scale (SPEC-DCMH §7): plain SGD, no momentum, one lr for every layer, weight decay
        # 5e-4 on every weight and bias (pretrained layers too). Fused: one pass over each tensor.
        sgd = functools.partial(torch.optim.SGD, lr=epoch_lr(lr, lr_end, 0, max_epoch),
                                weight_decay=WEIGHT_DECAY, fused=True)
        self.image_opt = sgd(self.net.image_net.parameters())
        self.text_opt = sgd(self.net.text_net.parameters())
        # zero-FG (SPEC-DCMH §7): F and G start at 0; rows no step has drawn stay 0 in every sum
        self.F = torch.zeros(num_train, bit, device=device)
        self.G = torch.zeros(num_train, bit, device=device)
        self.B = torch.zeros(num_train, bit, device=device)
        self.S = None  # N x N bool, from the training labels at the first epoch
        self.autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16,
                                          enabled=amp == 'bf16')
        self.world, self.image_pass, self.text_pass = SOLO, self.net.image_net, self.net.text_net

    def distribute(self, world, device):
        """Each rank runs its share of every batch through DDP and gathers the batch's outputs;
        every rank then writes them into F (or G) and computes g for the whole batch identically,
        so the backward of g/(n·N) hands each rank its share's slice times K, which DDP averages."""
        self.world = world
        self.image_pass = world.wrap(self.net.image_net, device)
        self.text_pass = world.wrap(self.net.text_net, device)

    @property
    def lr(self):
        return float(self.text_opt.param_groups[0]['lr'])

    def train_epoch(self, batches, generator):
        """SPEC-DCMH §5: B, the text pass, the image pass (⌈N/bs⌉ steps each), then J."""
        if self.S is None:
            self.S = similarity(batches.labels, batches.labels)
        # B-at-start (SPEC-DCMH §7): B is refreshed before the passes (epoch 1: F = G = 0, B = 0)
        self.B = update_codes(self.F, self.G, self.gamma)
        if self.num_train < self.batch_size:
            batches.note(f'training_size {self.num_train} < batch_size {self.batch_size}: every step '
                         f'uses all {self.num_train} rows (the official code fails here)')
        steps = -(-self.num_train // self.batch_size)
        losses = {}
        # text-first (SPEC-DCMH §7): the text net trains before the image net in every epoch
        for name, passes, opt, own, other in (('text', self.text_pass, self.text_opt, self.G, self.F),
                                              ('image', self.image_pass, self.image_opt, self.F, self.G)):
            # with-replacement (SPEC-DCMH §7): each step a fresh draw of distinct rows
            rows = random_batches(self.num_train, self.batch_size, steps, generator, self.device)
            step = functools.partial(self.step, passes, opt, own, other, name)
            with phase(f'{name} pass'):
                done = run_steps(step, batches, rows, f'{batches.desc} {name}',
                                 images=name == 'image', text=name == 'text')
            losses[f'{name}_gradient_norm'] = done.get('loss', torch.zeros(0))
            if len(losses[f'{name}_gradient_norm']) < steps:
                return losses  # a signal asked to stop
        with phase('objective J'):
            losses['loss'] = objective(self.S, self.F, self.G, self.B, self.gamma, self.eta).reshape(1)
        return losses

    def step(self, passes, opt, own, other, modality, rows, images, text, labels):
        """One step of a pass (SPEC-DCMH §4): own_b ← net(x_b) written first, g from the formula,
        out.backward(g / (n·N)), then SGD with weight decay. Returns ‖g‖ as its 'loss'."""
        with self.autocast():
            out = passes(images if modality == 'image' else text)
        # Under torchrun: the whole batch's outputs from every rank's share.
        own_b, = self.world.gather_rows(len(rows), out.float())
        own[rows] = own_b.detach()
        g = batch_gradient(self.S, own, other, self.B, rows, self.gamma, self.eta)
        opt.zero_grad()
        # grad-scale (SPEC-DCMH §7): ∂J/∂out over batch_size·N (n·N when N < batch_size)
        own_b.backward(g / (len(rows) * self.num_train))
        opt.step()
        return {'loss': g.norm()}

    def end_epoch(self, epoch, train_labels):
        """The next epoch's lr_e (logspace-lr), fixed within it. B is not refreshed after the last
        epoch: it is unused at test."""
        lr = epoch_lr(self.lr_start, self.lr_end, epoch + 1, self.max_epoch)
        for opt in (self.image_opt, self.text_opt):
            opt.param_groups[0]['lr'] = lr

    def encode_images(self, images):
        return encode_in_batches(self._codes(self.net.image_net), images, 4096, self.autocast, 'image codes')

    def encode_text(self, text):
        return encode_in_batches(self._codes(self.net.text_net), text, 4096, self.autocast, 'text codes')

    def _codes(self, net):
        """zero-bit (SPEC-DCMH §7): bit = [output > 0], so an exact 0 gives −1 (B's sign keeps 0)."""
        net.eval()
        return lambda x: torch.where(net(x) > 0, 1.0, -1.0)

    def save_best(self, run_dir):
        atomic_save(self.net.state_dict(), run_dir / self.MODEL_FILE)

    def load_best(self, run_dir, device):
        load_module(self.net, model_path(DCMH, run_dir), device)

    def state_dict(self):
        """Everything a resumed run continues from: nets, SGD states (with this epoch's lr), F, G, B."""
        return {'net': self.net.state_dict(), 'image_opt': self.image_opt.state_dict(),
                'text_opt': self.text_opt.state_dict(), 'F': self.F, 'G': self.G, 'B': self.B}

    def load_state_dict(self, state):
        for name in ('net', 'image_opt', 'text_opt'):
            getattr(self, name).load_state_dict(state[name])
        for name in ('F', 'G', 'B'):
            getattr(self, name).copy_(state[name])
