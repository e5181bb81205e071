"""DADH (Bai et al., ICMR 2020; SPEC.md): its hyper-parameters, networks, optimisers, one training
step per batch (SPEC §4), the epoch (§6) and the per-epoch updates (§5, §6), behind the method
interface of models/method.py.
"""
import functools

import torch
from torch import nn

from models.codes import update_codes
from models.dis_model import DIS
from models.gen_model import GEN
from models.losses import discriminator_loss, generator_loss
from models.method import Method, encode_in_batches, run_steps, shuffled_batches
from models.published import dadh_state, model_path
from models.schedule import decay_lr
from utils.checkpoint import atomic_save, load_module
from utils.distributed import SOLO


@torch.no_grad()
def repeat_bn_update(net, bn_inputs):
    """Update the BatchNorm running statistics once more with the same batches, as a second
    train-mode pass over the same input would (over the global batch under torchrun: the layer's
    own forward, whose output is dropped)."""
    for bn, x in zip((m for m in net if isinstance(m, nn.modules.batchnorm._BatchNorm)), bn_inputs):
        bn(x)


class DADH(Method):
    NAME = 'dadh'
    MODEL_FILE = 'GEN_module.pth'
    PUBLISHED_FILE = 'GEN_module.pth'
    OPTIONS = {
        'lr': (5e-5, 'learning rate of the generator and both discriminators (SPEC §4.2, §4.4)'),
        'alpha': (10.0, 'triplet weight; exactly 10 switches on the label weights (SPEC §4.1)'),
        'beta': (1.0, 'quantisation weight beta0 (the run uses beta0 + 0.1, SPEC §4.4)'),
        'gamma': (1.0, 'adversarial weight (SPEC §4.2, §4.3)'),
        'mu': (1e-5, 'weight of the network outputs in the code update (SPEC §5)'),
        'lamb': (1.0, 'ridge weight lambda of the code update (SPEC §5)'),
        'margin': (0.4, 'triplet margin (SPEC §4.1)'),
        'hidden_dim': (8192, 'width of the first hidden layer of both MLPs (SPEC §2); the feature '
                             "discriminator's last hidden layer is hidden_dim/16", 16),
        'dropout': (False, 'Dropout(0.5) after every ReLU of both MLPs'),
        'compile': (False, 'torch.compile the generator (worth it on a GPU)'),
        'cuda_graph': (False, 'CUDA: replay every full training batch as one recorded CUDA graph'),
    }
    DEMO = dict(hidden_dim=1024, bit=32, max_epoch=20, lr=1e-4)
    SETTINGS = {'nus': dict(lr=1e-5, dropout=True)}  # the published NUS-WIDE setting (SPEC §8)
    # SPEC §11: (data set, method, source, I→T and T→I at 16, 32, 64 bits); the baselines as DADH's
    # Table 3 prints them (AGAH's Table 1 prints the same values).
    PUBLISHED = (
        ('flickr25k', 'DADH', 'DADH paper', (0.8020, 0.8072, 0.8179), (0.7920, 0.7959, 0.8064)),
        ('nus-wide', 'DADH', 'DADH paper', (0.6492, 0.6662, 0.6664), (0.6501, 0.6679, 0.6808)),
        ('flickr25k', 'DCMH', 'as printed by DADH/AGAH', (0.7201, 0.7287, 0.7418), (0.7533, 0.7593, 0.7730)),
        ('flickr25k', 'PRDH', 'as printed by DADH/AGAH', (0.7221, 0.7395, 0.7550), (0.7548, 0.7638, 0.7772)),
        ('flickr25k', 'CHN', 'as printed by DADH/AGAH', (0.7632, 0.7776, 0.7892), (0.7636, 0.7807, 0.7906)),
        ('flickr25k', 'SSAH', 'as printed by DADH/AGAH', (0.7709, 0.7840, 0.7924), (0.7681, 0.7737, 0.7838)),
        ('flickr25k', 'SSWAH', 'as printed by DADH', (0.7806, 0.7813, 0.7821), (0.7768, 0.7806, 0.7841)),
        ('nus-wide', 'DCMH', 'as printed by DADH/AGAH', (0.5657, 0.6007, 0.6001), (None, None, None)),
        ('nus-wide', 'SSAH', 'as printed by DADH/AGAH', (0.6020, 0.6219, 0.6463), (None, None, None)),
    )
    STANDARDISE_FEATURES = True  # scalar mean and std over the image feature matrix (SPEC §1)
    SUBTRACT_AVERAGE_IMAGE = True  # CNN-F's input has the file's average image subtracted (SPEC §2)

    def __init__(self, num_train, device, cnn=None, *, image_dim, text_dim, bit, batch_size, lr,
                 alpha, beta, gamma, mu, lamb, margin, hidden_dim, dropout, amp=None,
                 compile=False, cuda_graph=False):
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.margin, self.lamb, self.mu, self.dropout = margin, lamb, mu, dropout
        self.gen = GEN(image_dim, text_dim, hidden_dim, bit, dropout, cnn).to(device)
        self.dis = DIS(hidden_dim, bit).to(device)
        # Fused Adam: one pass over each tensor instead of one per operation (10x faster on a CPU).
        # A CUDA graph bakes numbers in, so there the learning rate is a tensor changed in place.
        self.cuda_graph = cuda_graph and device.type == 'cuda'
        adam = functools.partial(torch.optim.Adam, fused=True, capturable=self.cuda_graph)
        rate = (lambda: torch.tensor(lr, device=device)) if self.cuda_graph else (lambda: lr)
        self.gen_opt = adam(self.gen.parameters(), lr=rate(), weight_decay=5e-4)
        self.feature_dis_opt = adam(self.dis.feature_dis.parameters(), lr=rate(), betas=(0.5, 0.9),
                                    weight_decay=1e-4)
        self.hash_dis_opt = adam(self.dis.hash_dis.parameters(), lr=rate(), betas=(0.5, 0.9),
                                 weight_decay=1e-4)
        # SPEC §5: the latest network outputs of every training sample, and the shared codes B.
        self.H_i = torch.zeros(num_train, bit, device=device)
        self.H_t = torch.zeros(num_train, bit, device=device)
        self.B = torch.sign(torch.randn(num_train, bit, device=device))

        # --amp bf16 runs the generator's networks in bfloat16; discriminators, losses and the code
        # update stay in float32. --compile compiles the generator's passes (state_dict unchanged).
        self.autocast = functools.partial(torch.autocast, device.type, dtype=torch.bfloat16,
                                          enabled=amp == 'bf16',
                                          cache_enabled=not self.cuda_graph)
        self.num_train, self.device = num_train, device
        self.batch_size, self.graph, self.warm_up_steps = batch_size, None, 0
        self.compile, self.world, self.passes = compile, SOLO, self.gen
        if compile:
            self.passes = torch.compile(self.gen)

    def distribute(self, world, device):
        """Run the generator's passes over the ranks of `world` (utils/distributed.py): DDP with
        BatchNorm over the global batch; losses, discriminators and buffers on the gathered batch."""
        self.world, self.passes = world, world.wrap(self.gen, device)
        if self.compile:
            self.passes = torch.compile(self.passes)
        if self.cuda_graph:
            print('--cuda_graph is single-process only: not used under torchrun')
            self.cuda_graph = False

    @property
    def lr(self):
        return float(self.gen_opt.param_groups[0]['lr'])

    def train_epoch(self, batches, generator):
        """One shuffled pass over the training rows (SPEC §6), a train_step per batch."""
        rows = shuffled_batches(self.num_train, self.batch_size, generator, self.device, batches.note)
        return run_steps(self.train_step, batches, rows, batches.desc)

    def train_step(self, rows, images, text, labels):
        """One batch of SPEC §6: both discriminator steps, then one generator step on E.
        `rows` index the batch within the training set. Returns the loss terms as tensors (with
        --cuda_graph they are overwritten by the next step: read or copy them before it).

        With --cuda_graph, full batches replay one recorded CUDA graph of `step`: the same kernels
        without the Python and launch cost of each of its ~600 operations."""
        if not self.cuda_graph or len(rows) != self.batch_size:
            return self.step(rows, images, text, labels)
        if self.graph is None:
            return self.warm_up_or_record(rows, images, text, labels)
        for static, new in zip(self.graph_inputs, (rows, images, text, labels)):
            static.copy_(new)
        self.graph.replay()
        return self.graph_losses

    def warm_up_or_record(self, *batch):
        """PyTorch's recipe: a few eager steps on a side stream, then record one step; recording only
        records, so the recorded step is then replayed to train on its batch."""
        if self.warm_up_steps < 3:
            self.warm_up_steps += 1
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                losses = self.step(*batch)
            torch.cuda.current_stream().wait_stream(side)
            return losses
        self.graph_inputs = [x.clone() for x in batch]
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.graph_losses = self.step(*self.graph_inputs)
        self.graph.replay()
        return self.graph_losses

    def step(self, rows, images, text, labels):
        """`rows` and `labels` are the global batch's; `images` and `text` this process's share
        of it (all of it in one process)."""
        gen, dis = self.gen.train(), self.dis.train()
        share = self.world.share(len(rows))
        gen.set_batch_share(share.start, len(rows))  # dropout masks drawn for the global batch
        with self.autocast():
            f_i, h_i, f_t, h_t, bn_inputs = self.passes(images, text)
            # SPEC §4.3: A_h reads a second train-mode pass of the text net, detached before the
            # hash head. Without dropout that pass repeats the first exactly, so reuse its features
            # and repeat only its side effect, the BatchNorm running-statistics update.
            if self.dropout:
                f_t_again = gen.text_net(text).detach()
            else:
                f_t_again = f_t.detach()
                repeat_bn_update(gen.text_net, bn_inputs)
            h_t_again = gen.text_hash(f_t_again)
        # Under torchrun: the global batch from every rank's share; the rest is one process's.
        f_i, f_t, h_i, h_t, h_t_again = self.world.gather_rows(
            len(rows), *(x.float() for x in (f_i, f_t, h_i, h_t, h_t_again)))
        self.H_i[rows] = h_i.detach()
        self.H_t[rows] = h_t.detach()

        dis_losses = []
        for net, opt, real, fake in ((dis.feature_dis, self.feature_dis_opt, f_i, f_t),
                                     (dis.hash_dis, self.hash_dis_opt, h_i, h_t)):
            loss = discriminator_loss(net, real.detach(), fake.detach(), self.gamma)
            opt.zero_grad()  # also drops what the last generator step left here
            loss.backward()
            opt.step()
            dis_losses.append(loss.detach())

        total, terms = generator_loss(h_i, h_t, labels, self.B[rows], dis.feature_dis(f_t),
                                      dis.hash_dis(h_t_again), self.margin, self.alpha, self.beta,
                                      self.gamma)
        self.gen_opt.zero_grad()  # to None: the new gradients are stored as they come, not added to zeros
        total.backward()
        self.gen_opt.step()
        return {**{k: v.detach() for k, v in terms.items()}, 'discriminator': sum(dis_losses),
                'loss': total.detach()}

    def end_epoch(self, epoch, train_labels):
        """SPEC §5 code update, then the SPEC §6 learning-rate decay (which fires after epoch 0 too)."""
        self.B.copy_(update_codes(train_labels, self.B, self.H_i, self.H_t, self.lamb, self.mu))
        decay_lr(self.gen_opt, epoch, 0.8)

    def encode_images(self, images):
        """sign(h_i) in eval mode (SPEC §2, §7), in batches of 4096 rows."""
        return encode_in_batches(self.gen.eval().image_codes, images, 4096, self.autocast, 'image codes')

    def encode_text(self, text):
        return encode_in_batches(self.gen.eval().text_codes, text, 4096, self.autocast, 'text codes')

    def save_best(self, run_dir):
        atomic_save(self.gen.state_dict(), run_dir / self.MODEL_FILE)

    def load_best(self, run_dir, device):
        load_module(self.gen, model_path(DADH, run_dir), device, translate=dadh_state)

    def state_dict(self):
        return {'gen': self.gen.state_dict(), 'dis': self.dis.state_dict(),
                'gen_opt': self.gen_opt.state_dict(),
                'feature_dis_opt': self.feature_dis_opt.state_dict(),
                'hash_dis_opt': self.hash_dis_opt.state_dict(),
                'B': self.B, 'H_i': self.H_i, 'H_t': self.H_t}

    def load_state_dict(self, state):
        for name in ('gen', 'dis', 'gen_opt', 'feature_dis_opt', 'hash_dis_opt'):
            getattr(self, name).load_state_dict(state[name])
        for name in ('B', 'H_i', 'H_t'):
            getattr(self, name).copy_(state[name])
