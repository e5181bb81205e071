"""SSAH (Li et al., CVPR 2018; SPEC-SSAH.md) as its official TensorFlow 1 code runs it (lelan-li/SSAH
@ 8780b20): the label, image and text nets and four discriminators (§3), every loss and monitor of
§4 as a function of tensors, TF1's Adam, and the epoch of §5 (label, discriminator, image and text
phases, their sub-phases and monitor-driven early stops), behind the method interface of
models/method.py. Each quirk of SPEC-SSAH §7 is named where it acts.
"""
import functools
from collections import defaultdict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from models.cnn_f import MATCONVNET_LRN, matconvnet_lrn
from models.method import Method, encode_in_batches, random_batches, run_steps
from models.published import model_path
from utils.checkpoint import atomic_save, load_module
from utils.errors import UserError
from utils.phases import phase

WINDOWS = (5, 10, 15, 30, 50)  # the text net's pooling windows w (§3)
MONITOR_ROWS = 1024  # rows of an M x M monitor matrix computed at a time
ENCODE_ROWS = 4096


# ---- Losses and monitors (§4) ----

def half_sum(x):
    """ℓ2(x) = ½Σx², TF's l2_loss (half-sum: every ℓ2 term is a sum; only ce is a mean)."""
    return 0.5 * (x * x).sum()


def similarity(L, L_b, scale):
    """S = scale·[L L_bᵀ > 0] (soft-similarity: scale 0.999, so similar pairs settle at θ ≈ 6.9)."""
    return scale * (L @ L_b.T > 0).to(L.dtype)


def pair_loss(Q, x, S):
    """P(Q, x) = ℓ2(S ⊙ θ − log(1 + e^θ)), θ = ½·Q xᵀ, Q and S constant (squared-likelihood: the
    per-pair log-likelihood squared, where DCMH's objective is the NLL itself)."""
    theta = 0.5 * Q.detach() @ x.T
    return half_sum(S.detach() * theta - F.softplus(theta))


def sigmoid_ce(logits, target):
    """ce(z, t): the MEAN sigmoid cross-entropy of logits z against the constant t."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def hashing_loss(FL, H, S, f, h, y_hat, y, alpha, gamma, beta, eta):
    """L_lab, and L_img and L_txt before their adversarial term: α·P(FL, f) + γ·P(H, h)
    + β·ℓ2(sign h − h) + η·ℓ2(y − ŷ), FL and H the label net's globals. Gradients reach f, h, ŷ."""
    # dead-B (SPEC-SSAH §7): the quantisation target is the sign of the net's own output; the
    # official B = sign(H) / sign(H + G + F) is computed and never read, so it is not kept here.
    return (alpha * pair_loss(FL, f, S) + gamma * pair_loss(H, h, S)
            + beta * half_sum(torch.sign(h).detach() - h) + eta * half_sum(y.detach() - y_hat))


def adversarial_loss(dis, features):
    """ce(D(features), 1) on constant features. inert-adversary (SPEC-SSAH §7): its gradient reaches
    D alone, which the hashing Adam then steps towards "label"; the hashing nets get nothing."""
    return sigmoid_ce(dis(features.detach()), 1.0)


def discriminator_loss(d_image, d_text, d_label_image, d_label_text, f_I, f_T, f_L):
    """L_D = ¼·[ce(D_I(f_I), 0) + ce(D_T(f_T), 0) + ce(D_LI(f_L), 1) + ce(D_LT(f_L), 1)], the
    features constant. four-discriminators (SPEC-SSAH §7): tf.Variable ignores scope reuse, so the
    label side has networks of its own, and each of the four sees one target class only."""
    f_I, f_T, f_L = f_I.detach(), f_T.detach(), f_L.detach()
    return 0.25 * (sigmoid_ce(d_image(f_I), 0.0) + sigmoid_ce(d_text(f_T), 0.0)
                   + sigmoid_ce(d_label_image(f_L), 1.0) + sigmoid_ce(d_label_text(f_L), 1.0))


def nll(X, Y, L, scale, rows=MONITOR_ROWS):
    """N(X, Y) = Σ(log(1 + e^θ) − S_f ⊙ θ), θ = ½XYᵀ, S_f = scale·[L Lᵀ > 0]: the real NLL over all
    M x M pairs in float64, `rows` rows of θ at a time. N(X, X) (the label monitor's) is symmetric:
    only the blocks on and right of the diagonal are computed, those right of it counted twice."""
    symmetric = X is Y
    X, Y, L = X.double(), Y.double(), L.double()
    total = X.new_zeros(())
    for first in range(0, len(X), rows):
        chunk = slice(first, first + rows)
        columns = slice(first if symmetric else 0, None)
        theta = 0.5 * X[chunk] @ Y[columns].T
        terms = F.softplus(theta) - similarity(L[chunk], L[columns], scale) * theta
        if symmetric:
            on_diagonal = len(theta)
            total += terms[:, :on_diagonal].sum() + 2 * terms[:, on_diagonal:].sum()
        else:
            total += terms.sum()
    return total


def label_monitor(LL, H, FL, L, alpha, beta, gamma, scale):
    """α·Σ(LL − L)² + γ·N(H, H) + β·N(FL, FL), in float64 over all M rows (monitor-stopping: it
    drives the label net's early stops, with α on the labels and β on the features)."""
    return (alpha * ((LL - L.double()) ** 2).sum() + gamma * nll(H, H, L, scale)
            + beta * nll(FL, FL, L, scale))


def modality_monitor(X, H, LX, L, alpha, beta, gamma, eta, scale):
    """The image monitor (X = F, LX = LI): α·N(F, H) + β·Σ[(sign F − F)² + (sign F − H)²]
    + γ·Σ(H − F)² + η·Σ(LI − L)², in float64 over all M rows. With X = G, LX = LT it is the text
    monitor, α·N(H, G) + β·Σ[(sign G − H)² + (sign G − G)²] + ..., since N(H, G) = N(G, H) (S_f is
    symmetric). monitor-stopping (SPEC-SSAH §7): a hash-only NLL plus an extra ‖H − X‖², unlike the
    objective the steps descend."""
    B = torch.sign(X)
    return (alpha * nll(X, H, L, scale) + beta * (((B - X) ** 2).sum() + ((B - H) ** 2).sum())
            + gamma * ((H - X) ** 2).sum() + eta * ((LX - L.double()) ** 2).sum())


# ---- Networks (§3) ----

def legacy_bilinear(q, size):
    """q (n x m) resized along its rows to n x size as TF1's resize_bilinear does it by default
    (legacy-bilinear, SPEC-SSAH §7: no half-pixel centres, which torch's interpolate has):
    s = i·(m / size) in float32, i0 = ⌊s⌋, i1 = min(i0 + 1, m − 1), r_i = q_i0 + (q_i1 − q_i0)(s − i0)."""
    m = q.shape[1]
    s = np.arange(size, dtype=np.float32) * (np.float32(m) / np.float32(size))
    i0 = np.floor(s).astype(np.int64)
    i1 = np.minimum(i0 + 1, m - 1)
    weight = torch.from_numpy(s - i0.astype(np.float32)).to(q.device, q.dtype)
    lower, upper = (q.index_select(1, torch.from_numpy(i).to(q.device)) for i in (i0, i1))
    return lower + (upper - lower) * weight


def multi_scale(x, scales, windows):
    """The text net's input (§3): per position d the channels [x, r_5, r_10, r_15, r_30, r_50],
    flattened position-major (index 6d + c). r_w: x averaged over non-overlapping windows of w
    (⌊D/w⌋ values, the tail dropped), q = ReLU(a_w·p), resized back to D (legacy_bilinear)."""
    n, D = x.shape
    channels = [x]
    for a, w in zip(scales, windows):
        p = x[:, :D // w * w].reshape(n, D // w, w).mean(dim=2)
        # dead-scale-branch (SPEC-SSAH §7): p ≥ 0, so a branch whose a_w starts negative gives 0
        # with a zero gradient for ever (about half of them).
        channels.append(legacy_bilinear(torch.relu(a * p), D))
    return torch.stack(channels, dim=2).flatten(1)


def small_normal_(module):
    """small-normal-init (SPEC-SSAH §7): every weight AND bias ~ N(0, 0.01²) (TF's standard normal
    x 0.01), not PyTorch's defaults."""
    for p in module.parameters():
        nn.init.normal_(p, std=0.01)
    return module


class TFLRN(nn.Module):
    """tf-lrn (SPEC-SSAH §7) over the units of an (n, units) batch: y_k = x_k / (2 + 1e-4·Σ x_j²)^0.75
    over j = k−2..k+2, clipped at the ends (MatConvNet's LRN, which CNN-F uses too)."""

    def __init__(self):
        super().__init__()
        self.lrn = matconvnet_lrn(*MATCONVNET_LRN)

    def forward(self, x):
        return self.lrn(x.unsqueeze(-1)).squeeze(-1)


class Heads(nn.Module):
    """h = tanh(Linear(e, bit)(u)) and ŷ = sigmoid(Linear(e, C)(u))."""

    def __init__(self, semantic_embed, bit, num_label):
        super().__init__()
        self.hash = nn.Linear(semantic_embed, bit)
        self.label = nn.Linear(semantic_embed, num_label)

    def forward(self, u):
        return torch.tanh(self.hash(u)), torch.sigmoid(self.label(u))


def mlp(width_in, hidden_dim, semantic_embed):
    """Linear → ReLU → LRN_TF → Linear(hidden, e) → ReLU: the label and text nets' feature f."""
    return nn.Sequential(nn.Linear(width_in, hidden_dim), nn.ReLU(), TFLRN(),
                         nn.Linear(hidden_dim, semantic_embed), nn.ReLU())


class LabNet(nn.Module):
    """y ∈ {0,1}^C -> (f_L, h_L, ŷ_L)."""

    def __init__(self, num_label, hidden_dim, semantic_embed, bit):
        super().__init__()
        self.feature = mlp(num_label, hidden_dim, semantic_embed)
        self.heads = Heads(semantic_embed, bit, num_label)
        small_normal_(self)

    def forward(self, y):
        f = self.feature(y)
        return (f, *self.heads(f))


class ImgNet(nn.Module):
    """Images -> (f_I, h_I, ŷ_I): CNN-F to relu7 (`cnn`, pretrained and trained with the rest), then
    fc8 = Linear(4096, e) → ReLU. On a feature file (cnn None) the input is taken as relu7's output:
    x <- max(x, 0), a no-op on post-ReLU features (§2)."""

    def __init__(self, image_dim, semantic_embed, bit, num_label, cnn=None):
        super().__init__()
        self.cnn = cnn if cnn is not None else nn.ReLU()
        width = cnn.out_dim if cnn is not None else image_dim
        self.fc8 = small_normal_(nn.Sequential(nn.Linear(width, semantic_embed), nn.ReLU()))
        self.heads = small_normal_(Heads(semantic_embed, bit, num_label))

    def forward(self, x):
        f = self.fc8(self.cnn(x))
        return (f, *self.heads(f))


class TxtNet(nn.Module):
    """Bag of words -> (f_T, h_T, ŷ_T): the multi-scale input, then the MLP to f_T. A window
    longer than the text (D < 50: test files only) is left out, where the official code fails."""

    def __init__(self, text_dim, hidden_dim, semantic_embed, bit, num_label):
        super().__init__()
        self.windows = tuple(w for w in WINDOWS if w <= text_dim)
        self.scales = nn.Parameter(torch.empty(len(self.windows)))  # a_w, one scalar per window
        self.feature = mlp((len(self.windows) + 1) * text_dim, hidden_dim, semantic_embed)
        self.lrn = TFLRN()
        self.heads = Heads(semantic_embed, bit, num_label)
        small_normal_(self)

    def forward(self, x):
        f = self.feature(multi_scale(x, self.scales, self.windows))
        # txt-heads-on-lrn (SPEC-SSAH §7): the heads read LRN(f_T); the losses read f_T itself.
        return (f, *self.heads(self.lrn(f)))


def discriminator(semantic_embed):
    """Linear(e, e) → ReLU → Linear(e, 256) → ReLU → Linear(256, 1), a logit (512-512-256-1 at the
    official e = 512; how it scales with e is this project's choice)."""
    return small_normal_(nn.Sequential(nn.Linear(semantic_embed, semantic_embed), nn.ReLU(),
                                       nn.Linear(semantic_embed, 256), nn.ReLU(), nn.Linear(256, 1)))


# ---- Optimiser (§1, §5) ----

class TF1Adam:
    """TF1's tf.train.AdamOptimizer (β1 0.9, β2 0.999, ε 1e-8, no weight decay): moments m, v per
    parameter and ONE step counter t for every parameter it steps (shared-adam-step, SPEC-SSAH
    §7), with TF's update, ε outside the bias correction:
    m += (1 − β1)(g − m), v ← β2·v + (1 − β2)·g², p −= lr·√(1 − β2^t)/(1 − β1^t) · m/(√v + ε).
    It runs as PyTorch's fused Adam kernel (one pass over each tensor, where separate operations
    take about 15: 2.5x faster over the text net's 36 M parameters), whose
    (lr/(1 − β1^t))·m/(√v/√(1 − β2^t) + ε') is that update for ε' = ε/√(1 − β2^t)."""

    def __init__(self, params, beta1=0.9, beta2=0.999, eps=1e-8):
        self.params = list(params)
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self.beta1, self.beta2, self.eps = beta1, beta2, eps
        self.t = torch.zeros((), device=self.params[0].device)  # steps taken, where the kernel reads it

    @torch.no_grad()
    def step(self, lr):
        """One step at rate lr of every parameter that has a gradient (TF's minimize steps those
        its loss reaches); their gradients are then dropped."""
        live = [i for i, p in enumerate(self.params) if p.grad is not None]
        params = [self.params[i] for i in live]
        self.t += 1
        torch._fused_adam_(params, [p.grad for p in params], [self.m[i] for i in live],
                           [self.v[i] for i in live], [], [self.t] * len(params), lr=lr,
                           beta1=self.beta1, beta2=self.beta2, weight_decay=0.0,
                           eps=self.eps / (1 - self.beta2 ** self.t.item()) ** 0.5,
                           amsgrad=False, maximize=False)
        for p in params:
            p.grad = None

    def minimize(self, loss, lr):
        loss.backward()
        self.step(lr)

    def state_dict(self):
        return {'m': self.m, 'v': self.v, 't': self.t}

    def load_state_dict(self, state):
        for mine, saved in zip(self.m + self.v, state['m'] + state['v']):
            mine.copy_(saved)
        self.t.copy_(state['t'])


# ---- Schedule (§5) ----

class Stopped(Exception):
    """A signal cut a pass short: the epoch ends at once."""


def sub_phase(passes, train_pass, monitor, values, every, stop_from):
    """One sub-phase of at most `passes` passes (§5); returns how many ran. After pass j: if j % every
    == 0, monitor() is appended to `values`; once j ≥ stop_from, a last value no lower than the one
    before it ends the sub-phase (monitor-stopping, SPEC-SSAH §7)."""
    for j in range(passes):
        train_pass()
        if j % every == 0:
            values.append(monitor())
        if j >= stop_from and values[-1] >= values[-2]:
            return j + 1
    return passes


# Per hashing net: the globals its f, h and ŷ are written to, and those its loss reads (float32
# copies, as TF fed its float64 arrays to float32 placeholders).
OUTPUTS = {'label': ('FL', 'H', 'LL'), 'image': ('FI', 'F', 'LI'), 'text': ('FT', 'G', 'LT')}
READS = {'label': ('FL', 'H'), 'image': ('FL', 'H', 'FI'), 'text': ('FL', 'H')}
GLOBALS = ('F', 'G', 'H', 'LL', 'LI', 'LT', 'FI', 'FT', 'FL')  # §5's order of initialisation
PHASES = ('label', 'discriminator', 'image', 'text')
# What a step of each phase reads of a batch (the label net needs labels only: raw images are read
# from disk), and per hashing net (monitor every .. passes, first pass j that may end a sub-phase).
INPUTS = {'label': dict(images=False, text=False), 'discriminator': {}, 'image': dict(text=False),
          'text': dict(images=False)}
STOPS = {'label': (1, 2), 'image': (2, 3), 'text': (2, 3)}


class SSAH(Method):
    NAME = 'ssah'
    MODEL_FILE = 'SSAH_module.pth'
    OPTIONS = {
        'semantic_embed': (512, 'width e of the features f (SEMANTIC_EMBED)', 1),
        'hidden_dim': (4096, 'width of the label and text nets\' first layer (4096 in the official '
                             'code; smaller only for quick runs)', 1),
        'k_lab': (10, 'label passes per epoch: at most k_lab, then k_lab/2 (§5)', 1),
        'k_dis': (1, 'discriminator passes in each of its two sub-phases', 1),
        'k_img': (15, 'image passes: at most k_img, k_img/2, k_img/3', 1),
        'k_txt': (15, 'text passes: at most k_txt, k_txt/2, k_txt/3', 1),
        'alpha': (1.0, 'feature-pair weight α (in the label monitor: the label term\'s)'),
        'gamma': (1.0, 'hash-pair weight γ'),
        'beta': (1.0, 'quantisation weight β (in the label monitor: the feature NLL\'s)'),
        'eta': (1.0, 'label-prediction weight η'),
        'delta': (1.0, 'adversarial weight δ'),
        'sim_scale': (0.999, 'S = sim_scale·[shared label]'),
        's_lab': (2.0, 'label net rate: lr = 10^-(s_lab + 0.5·(epoch + sub-phase))'),
        's_dis': (3.0, 'discriminator rate exponent, likewise'),
        's_img': (4.5, 'image net rate exponent, likewise'),
        's_txt': (3.5, 'text net rate exponent, likewise'),
        'max_iter': (100, 'MAX_ITER: the rate lists are 10^-np.arange(s, max_iter, 0.5); their end '
                          'ends the run (after epoch 189 by default)', 1),
    }
    # no-selection (SPEC-SSAH §7): the last epoch's model, the query set watched every epoch.
    DEFAULTS = dict(max_epoch=500, bit=16, valid=True, valid_freq=1, select_on='last')
    # NUS-WIDE is not in the official code: DCMH's sizes, a project choice (§2).
    DATA_DEFAULTS = {'mir': dict(query_size=2000, training_size=10000, db_size=18015),
                     'nus': dict(query_size=2100, training_size=10500, db_size=None)}
    # Smaller nets and fewer, faster image and text passes: a run of seconds. On the demo's sparse
    # labels (a quarter of pairs similar) semantic_embed 32, or k_lab 2 instead of 10, left the
    # ReLUs before the heads dead and (nearly) all codes equal in some seeds.
    DEMO = dict(query_size=500, db_size=2500, training_size=1024, hidden_dim=512, semantic_embed=128,
                max_epoch=3, k_img=6, k_txt=6, s_img=3.0, s_txt=3.0)
    PUBLISHED = (
        ('flickr25k', 'SSAH', 'SSAH paper, Table 2 (CNN-F)', (0.782, 0.790, 0.800), (0.791, 0.795, 0.803)),
        ('nus-wide', 'SSAH', 'SSAH paper, Table 2 (CNN-F)', (0.642, 0.636, 0.639), (0.669, 0.662, 0.666)),
        ('ms-coco', 'SSAH', 'SSAH paper, Table 2 (CNN-F)', (0.550, 0.558, 0.557), (0.537, 0.538, 0.529)),
        ('flickr25k', 'SSAH', 'SSAH paper, Table 3 (VGG-19)', (0.797, 0.809, 0.810), (0.782, 0.797, 0.799)),
        ('nus-wide', 'SSAH', 'SSAH paper, Table 3 (VGG-19)', (0.636, 0.636, 0.637), (0.653, 0.676, 0.683)),
    )  # and its reruns as AGAH's and DADH's tables print them: models/dadh.py
    SUBTRACT_AVERAGE_IMAGE = True  # x − averageImage, no scaling, crop or flip (§2)
    CNN_GEOMETRY = 'matconvnet'  # tf-lrn, and pool1 without 'SAME' padding: 27 x 27 (§3)
    # unseeded-split (SPEC-SSAH §7): the official permutation is unseeded; it is drawn from --seed.
    SPLIT = 'random'

    def __init__(self, num_train, device, cnn=None, *, image_dim, text_dim, num_label, bit,
                 batch_size, semantic_embed, hidden_dim, k_lab, k_dis, k_img, k_txt, alpha, gamma,
                 beta, eta, delta, sim_scale, s_lab, s_dis, s_img, s_txt, max_iter, amp=None):
        if text_dim < max(WINDOWS):
            print(f'--text_dim {text_dim}: the text pooling windows longer than the text '
                  f'({", ".join(str(w) for w in WINDOWS if w > text_dim)}) are left out (the official '
                  f'code cannot run on text of fewer than {max(WINDOWS)} words)')
        if cnn is None:
            print('--model ssah on image features: they are taken as CNN-F\'s relu7 output (x <- '
                  'max(x, 0)) and fc8 onwards is trained (an approximation: the official model '
                  'fine-tunes every CNN-F layer at the image rate)')
        self.num_train, self.device, self.batch_size = num_train, device, batch_size
        self.alpha, self.gamma, self.beta, self.eta, self.delta = alpha, gamma, beta, eta, delta
        self.sim_scale = sim_scale
        self.nets = nn.ModuleDict({
            'label': LabNet(num_label, hidden_dim, semantic_embed, bit),
            'image': ImgNet(image_dim, semantic_embed, bit, num_label, cnn),
            'text': TxtNet(text_dim, hidden_dim, semantic_embed, bit, num_label)}).to(device)
        self.discriminators = nn.ModuleDict({
            name: discriminator(semantic_embed) for name in ('image', 'text', 'label_image', 'label_text')
        }).to(device)
        # One Adam for the three nets and D_I, D_T (which the adversarial terms reach), one for the
        # four discriminators' own step.
        self.hashing_adam = TF1Adam([*self.nets.parameters(), *self.discriminators['image'].parameters(),
                                     *self.discriminators['text'].parameters()])
        self.dis_adam = TF1Adam(self.discriminators.parameters())
        # random-globals (SPEC-SSAH §7): every global starts N(0, 1), float64; rows no step has
        # visited keep it and enter the losses and monitors.
        widths = {'F': bit, 'G': bit, 'H': bit, 'LL': num_label, 'LI': num_label, 'LT': num_label,
                  'FI': semantic_embed, 'FT': semantic_embed, 'FL': semantic_embed}
        self.globals = {name: torch.randn(num_train, widths[name], dtype=torch.float64, device=device)
                        for name in GLOBALS}

        # py2-division (SPEC-SSAH §7): Python 2's 10/2 = 5, 15/2 = 7, 15/3 = 5 passes.
        self.passes = {'label': (k_lab, k_lab // 2), 'discriminator': (k_dis, k_dis),
                       'image': (k_img, k_img // 2, k_img // 3), 'text': (k_txt, k_txt // 2, k_txt // 3)}
        # sqrt10-decay (SPEC-SSAH §7): lr = 10^-(s + 0.5·(epoch + k)), the official lists
        # np.power(0.1, np.arange(s, MAX_ITER, 0.5)) as TF reads them, in float32 (the image rate
        # reaches 0 near epoch 82).
        exponents = dict(zip(PHASES, (s_lab, s_dis, s_img, s_txt)))
        self.rates = {name: np.power(0.1, np.arange(s, max_iter, 0.5)).astype(np.float32)
                      for name, s in exponents.items()}
        # run-ends-189 (SPEC-SSAH §7): epoch e reads rates[e + k]; past the end of a list the
        # official run dies with an IndexError (in its image phase of epoch 189 by default).
        epochs = {name: len(self.rates[name]) - len(self.passes[name]) + 1 for name in PHASES}
        short = min(PHASES, key=epochs.get)
        if epochs[short] < 1:
            raise UserError(f'--max_iter {max_iter} leaves the {short} phase no rate for epoch 1: '
                            f'its rates are 10^-np.arange({exponents[short]}, max_iter, 0.5), and '
                            f'it reads {len(self.passes[short])} of them')
        self.epoch_limit = (epochs[short], f'its rate lists, 10^-np.arange(s, max_iter {max_iter}, '
                                           f'0.5) as the official code builds them, hold no {short} '
                                           'rate for the next epoch (the official run ends there '
                                           'with an IndexError)')
        self.epoch = 0  # the next epoch to train, from 0
        self.autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16,
                                          enabled=amp == 'bf16')

    @property
    def lr(self):
        """The image net's first rate of the latest epoch trained (of epoch 0 before any)."""
        return float(self.rates['image'][max(self.epoch - 1, 0)])

    def rate(self, name, k):
        """lr(name, epoch, k) of the epoch being trained."""
        return float(self.rates[name][self.epoch + k])

    def train_epoch(self, batches, generator):
        """Epoch `self.epoch` of §5: the label net, the discriminators, the image net, then the text
        net, each in its sub-phases k at lr(phase, epoch, k). Returns the step losses of each net
        ('label', 'image', 'text') and of the discriminators, the monitors ('label_monitor', ...),
        and 'loss', the sum of the three nets' mean step losses; {} when a signal cut it short."""
        if self.num_train < self.batch_size:
            raise UserError(f'--model ssah: a pass is floor(training_size / batch_size) steps (§5), '
                            f'none with training_size {self.num_train} and batch_size '
                            f'{self.batch_size}')
        L, terms = batches.labels, defaultdict(list)
        weights = self.alpha, self.beta, self.gamma
        try:
            self.hashing_phase('label', batches, generator, terms, lambda g: label_monitor(
                g['LL'], g['H'], g['FL'], L, *weights, self.sim_scale))
            self.discriminator_phase(batches, generator, terms)
            self.hashing_phase('image', batches, generator, terms, lambda g: modality_monitor(
                g['F'], g['H'], g['LI'], L, *weights, self.eta, self.sim_scale))
            self.hashing_phase('text', batches, generator, terms, lambda g: modality_monitor(
                g['G'], g['H'], g['LT'], L, *weights, self.eta, self.sim_scale))
        except Stopped:
            return {}
        losses = {term: torch.cat([v.reshape(-1) for v in values]) for term, values in terms.items()}
        losses['loss'] = sum(losses[name].mean() for name in OUTPUTS).reshape(1)
        return losses

    def hashing_phase(self, name, batches, generator, terms, monitor):
        """The sub-phases k of hashing net `name` (§5), each of at most passes[k] passes at
        lr(name, epoch, k), ended early by `monitor` (of the globals) on STOPS[name]'s rule."""
        read = {g: self.globals[g].float() for g in READS[name]}
        for k, passes in enumerate(self.passes[name]):
            step = functools.partial(self.hashing_step, name, batches.labels, read, self.rate(name, k))

            def train_pass():
                with phase(name):
                    terms[name].append(self.one_pass(name, step, batches, generator, f'{name} {k}'))

            def monitored():
                with phase(f'{name} monitor'):
                    return monitor(self.globals)

            sub_phase(passes, train_pass, monitored, terms[f'{name}_monitor'], *STOPS[name])

    def discriminator_phase(self, batches, generator, terms):
        """Sub-phases k = 0, 1 of k_dis passes each at lr(discriminator, epoch, k) (§5)."""
        for k, passes in enumerate(self.passes['discriminator']):
            step = functools.partial(self.discriminator_step, lr=self.rate('discriminator', k))
            for _ in range(passes):
                with phase('discriminator'):
                    terms['discriminator'].append(
                        self.one_pass('discriminator', step, batches, generator, f'discriminator {k}'))

    def one_pass(self, name, step, batches, generator, desc):
        """⌊M/n⌋ steps of phase `name`, each on fresh random rows (sampled-batches, SPEC-SSAH §7: not
        a shuffled epoch; rows repeat and about 37% are missed), reading only the inputs the phase
        needs; their losses. Stopped when a signal cut the pass short."""
        rows = random_batches(self.num_train, self.batch_size, self.num_train // self.batch_size,
                              generator, self.device)
        losses = run_steps(step, batches, rows, f'{batches.desc} {desc}', **INPUTS[name])
        if len(losses.get('loss', ())) < len(rows):
            raise Stopped
        return losses['loss']

    def forward(self, net, x):
        """(f, h, ŷ) of a net as float32 (its layers in bfloat16 under --amp bf16)."""
        with self.autocast():
            return tuple(out.float() for out in net(x))

    def hashing_step(self, name, L, read, lr, rows, images, text, labels):
        """One step of net `name` on training rows `rows` (§4): forward the batch, write its f, h, ŷ
        into the net's global rows (and into the float32 copies `read` of them), then one
        hashing-Adam step at rate lr on its loss. L: every training row's labels."""
        f, h, y_hat = self.forward(self.nets[name], {'label': labels, 'image': images, 'text': text}[name])
        for g, value in zip(OUTPUTS[name], (f, h, y_hat)):
            self.globals[g][rows] = value.detach().double()
            if g in read:
                read[g][rows] = value.detach()
        loss = hashing_loss(read['FL'], read['H'], similarity(L, labels, self.sim_scale), f, h, y_hat,
                            labels, self.alpha, self.gamma, self.beta, self.eta)
        if name == 'image':
            # whole-set-image-adversary (SPEC-SSAH §7): D_I reads all M global image features (this
            # batch's just written), D_T only the batch's text features.
            loss = loss + self.delta * adversarial_loss(self.discriminators['image'], read['FI'])
        elif name == 'text':
            loss = loss + self.delta * adversarial_loss(self.discriminators['text'], f)
        self.hashing_adam.minimize(loss, lr)
        return {'loss': loss.detach()}

    def discriminator_step(self, rows, images, text, labels, lr):
        """L_D on the batch features of the current nets, one discriminator-Adam step (§4)."""
        with torch.no_grad():
            features = [self.forward(self.nets[name], x)[0]
                        for name, x in (('image', images), ('text', text), ('label', labels))]
        loss = discriminator_loss(*self.discriminators.values(), *features)
        self.dis_adam.minimize(loss, lr)
        return {'loss': loss.detach()}

    def end_epoch(self, epoch, train_labels):
        self.epoch = epoch + 1

    def encode_images(self, images):
        """sign(h_I) of the (mean-subtracted, on raw images) images (§6)."""
        return self.codes('image', images)

    def encode_text(self, text):
        return self.codes('text', text)

    def codes(self, name, x):
        # unstable-argsort (SPEC-SSAH §7): the official MAP ranks with numpy's unstable sort; the
        # project's (SPEC §7) is stable, which can differ from it in the order of ties only.
        return encode_in_batches(lambda rows: torch.sign(self.forward(self.nets[name], rows)[1]), x,
                                 ENCODE_ROWS, self.autocast, f'{name} codes')

    def save_best(self, run_dir):
        atomic_save(self.nets.state_dict(), run_dir / self.MODEL_FILE)

    def load_best(self, run_dir, device):
        load_module(self.nets, model_path(SSAH, run_dir), device)

    def state_dict(self):
        return {'nets': self.nets.state_dict(), 'discriminators': self.discriminators.state_dict(),
                'hashing_adam': self.hashing_adam.state_dict(), 'dis_adam': self.dis_adam.state_dict(),
                'globals': self.globals, 'epoch': self.epoch}

    def load_state_dict(self, state):
        for name in ('nets', 'discriminators', 'hashing_adam', 'dis_adam'):
            getattr(self, name).load_state_dict(state[name])
        for name, tensor in self.globals.items():
            tensor.copy_(state['globals'][name])
        self.epoch = state['epoch']
