"""The step learning-rate decay both methods use after epochs 0, 100 and 200 (SPEC §6, SPEC-AGAH)."""
import torch


def decay_lr(optimizer, epoch, factor, floor=1e-6):
    """After an epoch e with e % 100 == 0 (so after epoch 0 too), lr <- max(factor · lr, floor) in
    every parameter group."""
    if epoch % 100:
        return
    for group in optimizer.param_groups:
        lr = max(float(group['lr']) * factor, floor)
        if torch.is_tensor(group['lr']):
            group['lr'].fill_(lr)  # in place: a recorded CUDA graph reads this tensor
        else:
            group['lr'] = lr
