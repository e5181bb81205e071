"""AGAH (Gu et al., ICMR 2019; SPEC-AGAH.md): its hyper-parameters, networks, optimisers, one training
step per batch, the epoch and the per-epoch code-map and feature-map updates, behind the method
interface of models/method.py.
"""
import functools

import torch
from torch import nn

from models.codes import update_code_map, update_feature_map
from models.losses import agah_loss, critic_loss
from models.method import Method, encode_in_batches, run_steps, shuffled_batches
from models.published import agah_state, model_path
from models.schedule import decay_lr
from utils.checkpoint import atomic_save, load_file, load_module
from utils.distributed import SOLO
from utils.errors import UserError

FEATURE_MAP_FILE = 'feature_map.pth'


def normalise_batch(f, norm):
    """f / ‖f‖ with ONE norm over the whole batch tensor, held constant (SPEC-AGAH); `norm` is
    torch.Tensor.norm, or under torchrun the norm over every rank's share of the batch."""
    return f / norm(f.detach())


def critic(emb_dim):
    return nn.Sequential(nn.Linear(emb_dim, emb_dim), nn.ReLU(inplace=True), nn.Linear(emb_dim, 256),
                         nn.ReLU(inplace=True), nn.Linear(256, 1))


class AGAHNet(nn.Module):
    """Image and text nets to e = emb_dim, label-feature-map attention, tanh hash heads and
    classifiers (logits) per modality. `cnn` (CNN-F to fc7) goes first on raw images; without it
    the image features are taken as CNN-F's fc7 already applied."""

    def __init__(self, image_dim, text_dim, hidden_dim, emb_dim, bit, num_label, lambd, cnn=None):
        super().__init__()
        image_layers = [nn.Linear(cnn.out_dim if cnn else image_dim, emb_dim), nn.ReLU(inplace=True)]
        self.image_net = nn.Sequential(*([cnn] if cnn else []), *image_layers)
        self.text_net = nn.Sequential(nn.Linear(text_dim, hidden_dim), nn.ReLU(inplace=True),
                                      nn.Linear(hidden_dim, hidden_dim // 2), nn.ReLU(inplace=True),
                                      nn.Linear(hidden_dim // 2, emb_dim), nn.ReLU(inplace=True))
        self.image_hash = nn.Sequential(nn.Linear(emb_dim, bit), nn.Tanh())
        self.text_hash = nn.Sequential(nn.Linear(emb_dim, bit), nn.Tanh())
        self.image_classifier = nn.Linear(emb_dim, num_label)
        self.text_classifier = nn.Linear(emb_dim, num_label)
        self.lambd = lambd

    def attend(self, f, feature_map):
        """f̂ = λf + (1 − λ)(aF) / Σ_k a_k with a = σ(5 fFᵀ)."""
        a = torch.sigmoid(5 * f @ feature_map.T)
        return self.lambd * f + (1 - self.lambd) * (a @ feature_map) / a.sum(dim=1, keepdim=True)

    def forward(self, images, text, feature_map, norm=torch.Tensor.norm):
        """The training passes (what DDP runs): f, h and classifier logits of images, then text."""
        return (*self.image_pass(images, feature_map, norm), *self.text_pass(text, feature_map, norm))

    def image_pass(self, images, feature_map, norm=torch.Tensor.norm):
        """(f, h, classifier logits) of an image batch."""
        f = normalise_batch(self.image_net(images), norm)
        f_hat = self.attend(f, feature_map)
        return f, self.image_hash(f_hat), self.image_classifier(f_hat)

    def text_pass(self, text, feature_map, norm=torch.Tensor.norm):
        f = normalise_batch(self.text_net(text), norm)
        f_hat = self.attend(f, feature_map)
        return f, self.text_hash(f_hat), self.text_classifier(f_hat)


class AGAH(Method):
    NAME = 'agah'
    MODEL_FILE = 'AGAH_module.pth'
    PUBLISHED_FILE = 'AGAH.pth'
    OPTIONS = {
        'lr': (1e-4, 'learning rate of the image net; lr x 10 for the rest and the critics'),
        'alpha': (1.0, 'bit-balance weight'),
        'beta': (0.0, 'classification weight'),
        'gamma': (0.001, 'code-map weight'),
        'eta': (1.0, 'quantisation weight'),
        'mu': (1.0, 'adversarial weight'),
        'margin': (0.3, 'triplet margin'),
        'emb_dim': (512, 'width e of the features both nets end in (SPEC-AGAH)', 1),
        'hidden_dim': (8192, 'width of the text net\'s first hidden layer, the second half of it '
                             '(8192 and 4096 in the published code; smaller only for quick runs)', 2),
        'lambd': (0.8, 'attention mix: f^ = lambd f + (1 - lambd) attended label features'),
        'data_enhance': (False, 'add n/2 mixed training samples 0.5 a + 0.5 b'),
        'delta': (None, 'in the published configuration but read by nothing; accepted and unused'),
    }
    DEFAULTS = dict(valid_freq=20)
    # AGAH's published code splits MIRFlickr with the queries first (SPEC-AGAH "Data and split").
    DATA_DEFAULTS = {'mir': dict(query_size=2000, db_size=18015, layout='query_first')}
    DEMO = dict(bit=32, max_epoch=20, valid_freq=5)
    PUBLISHED = (
        ('flickr25k', 'AGAH', 'AGAH paper', (0.7923, 0.7945, 0.8069), (0.7887, 0.7904, 0.8049)),
        ('nus-wide', 'AGAH', 'AGAH paper', (0.6455, 0.6600, 0.6512), (0.6313, 0.6422, 0.6336)),
    )
    STANDARDISE_FEATURES = False  # features are read as CNN-F gives them
    SUBTRACT_AVERAGE_IMAGE = False  # AGAH feeds raw pixel values to CNN-F

    def __init__(self, num_train, device, cnn=None, *, image_dim, text_dim, num_label, bit,
                 batch_size, lr, alpha, beta, gamma, eta, mu, margin, emb_dim, hidden_dim, lambd, amp=None):
        if cnn is None:
            print('--model agah on image features: CNN-F is taken as already applied and frozen '
                  '(an approximation: the published model fine-tunes it on raw images)')
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.eta, self.mu, self.margin = eta, mu, margin
        self.num_train, self.device, self.batch_size = num_train, device, batch_size
        self.code_batch = batch_size  # the whole-batch norm makes a code depend on its batch
        self.net = AGAHNet(image_dim, text_dim, hidden_dim, emb_dim, bit, num_label, lambd, cnn).to(device)
        self.image_critic, self.text_critic = critic(emb_dim).to(device), critic(emb_dim).to(device)
        self.image_critic_opt, self.text_critic_opt = (
            torch.optim.Adamax(c.parameters(), lr=lr * 10, betas=(0.5, 0.9), weight_decay=1e-4)
            for c in (self.image_critic, self.text_critic))
        rest = [p for name, p in self.net.named_parameters() if not name.startswith('image_net.')]
        self.gen_opt = torch.optim.Adamax([{'params': self.net.image_net.parameters(), 'lr': lr},
                                           {'params': rest, 'lr': lr * 10}], weight_decay=5e-4)
        # The latest features and outputs of every training sample, the label feature map F and
        # the code map M (SPEC-AGAH "Per-epoch updates").
        e, K = emb_dim, num_label
        self.F_i, self.F_t = (torch.randn(num_train, e, device=device) for _ in range(2))
        self.H_i, self.H_t = (torch.randn(num_train, bit, device=device) for _ in range(2))
        self.feature_map = torch.randn(K, e, device=device)
        self.code_map = torch.sign(torch.randn(K, bit, device=device))
        self.autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16,
                                          enabled=amp == 'bf16')
        self.world, self.passes = SOLO, self.net

    @classmethod
    def training_mix(cls, hyper):
        """data_enhance: n/2 mixed rows 0.5·a + 0.5·b appended to the training set (SPEC-AGAH)."""
        return 0.5 if hyper['data_enhance'] else None

    def distribute(self, world, device):
        """Run the nets over the ranks of `world` (utils/distributed.py): DDP, the whole-batch norm
        over the global batch; critics, losses and buffers on the gathered batch."""
        self.world, self.passes = world, world.wrap(self.net, device)

    @property
    def lr(self):
        return float(self.gen_opt.param_groups[0]['lr'])

    def train_epoch(self, batches, generator):
        """One shuffled pass over the training rows, a train_step per batch."""
        rows = shuffled_batches(self.num_train, self.batch_size, generator, self.device, batches.note)
        return run_steps(self.train_step, batches, rows, batches.desc)

    def train_step(self, rows, images, text, labels):
        """One batch: a step of each critic, then one generator step on all six terms. `rows` and
        `labels` are the global batch's; `images` and `text` this process's share of it."""
        self.net.train()
        with self.autocast():
            outputs = self.passes(images, text, self.feature_map, self.world.whole_batch_norm)
        # Under torchrun: the global batch from every rank's share; the rest is one process's.
        f_i, h_i, class_i, f_t, h_t, class_t = self.world.gather_rows(
            len(rows), *(x.float() for x in outputs))
        for store, value in ((self.F_i, f_i), (self.F_t, f_t), (self.H_i, h_i), (self.H_t, h_t)):
            store[rows] = value.detach()

        critic_losses = []  # the critics step first, as DADH's discriminators do
        for critic_net, opt, real, fake in ((self.text_critic, self.text_critic_opt, f_t, f_i),
                                            (self.image_critic, self.image_critic_opt, f_i, f_t)):
            loss = critic_loss(critic_net, real.detach(), fake.detach())
            opt.zero_grad()  # also drops what the last generator step left here
            loss.backward()
            opt.step()
            critic_losses.append(loss.detach())

        adversarial = -self.text_critic(f_i).mean() - self.image_critic(f_t).mean()
        total, terms = agah_loss(h_i, h_t, class_i, class_t, labels, self.code_map, adversarial,
                                 self.margin, self.alpha, self.beta, self.gamma, self.eta, self.mu)
        self.gen_opt.zero_grad()
        total.backward()
        self.gen_opt.step()
        return {**{k: v.detach() for k, v in terms.items()}, 'critic': sum(critic_losses),
                'loss': total.detach()}

    def end_epoch(self, epoch, train_labels):
        """Code map (in place, bit by bit), feature map, then the lr decay after epoch 0, 100, 200."""
        update_code_map(self.code_map, self.H_i, self.H_t, train_labels)
        self.feature_map.copy_(update_feature_map(self.F_i, self.F_t, train_labels, self.feature_map))
        decay_lr(self.gen_opt, epoch, 0.6)  # the image group and the rest

    def encode_images(self, images):
        """sign(h) with the current F, in batches of the training batch size from the first row:
        the whole-batch normalisation makes a code depend on its batch, as in the reference."""
        return self._codes(self.net.image_pass, images, 'image codes')

    def encode_text(self, text):
        return self._codes(self.net.text_pass, text, 'text codes')

    def _codes(self, to_outputs, x, name):
        self.net.eval()
        return encode_in_batches(lambda rows: torch.sign(to_outputs(rows, self.feature_map)[1].float()),
                                 x, self.batch_size, self.autocast, name)

    @staticmethod
    def is_better(mapi2t, mapt2i, best):
        """Keep the model when BOTH MAPs reach their best so far (SPEC-AGAH)."""
        return best is None or (mapi2t >= best[0] and mapt2i >= best[1])

    def save_best(self, run_dir):
        # F first: the model file is written last, so a model on disk always has its F beside it.
        atomic_save(self.feature_map, run_dir / FEATURE_MAP_FILE)
        atomic_save(self.net.state_dict(), run_dir / self.MODEL_FILE)

    def load_best(self, run_dir, device):
        load_module(self.net, model_path(AGAH, run_dir), device, translate=agah_state)
        feature_map = load_file(run_dir / FEATURE_MAP_FILE, device, what='label feature map')
        if not torch.is_tensor(feature_map) or feature_map.shape != self.feature_map.shape:
            raise UserError(f'{run_dir / FEATURE_MAP_FILE}: expected a tensor of shape '
                            f'{tuple(self.feature_map.shape)}, found '
                            f'{getattr(feature_map, "shape", type(feature_map).__name__)}')
        self.feature_map.copy_(feature_map)

    MODULES = ('net', 'image_critic', 'text_critic', 'gen_opt', 'image_critic_opt', 'text_critic_opt')
    BUFFERS = ('F_i', 'F_t', 'H_i', 'H_t', 'feature_map', 'code_map')

    def state_dict(self):
        return {**{name: getattr(self, name).state_dict() for name in self.MODULES},
                **{name: getattr(self, name) for name in self.BUFFERS}}

    def load_state_dict(self, state):
        for name in self.MODULES:
            getattr(self, name).load_state_dict(state[name])
        for name in self.BUFFERS:
            getattr(self, name).copy_(state[name])
