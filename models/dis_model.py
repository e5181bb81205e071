"""The two discriminators of SPEC §3, each returning one logit per sample (shape n)."""
from torch import nn


class DIS(nn.Module):
    def __init__(self, hidden_dim, bit):
        super().__init__()
        f = hidden_dim // 4
        self.feature_dis = nn.Sequential(nn.Linear(f, f // 2), nn.ReLU(inplace=True),
                                         nn.Linear(f // 2, f // 4), nn.ReLU(inplace=True),
                                         nn.Linear(f // 4, 1), nn.Flatten(0))
        self.hash_dis = nn.Sequential(nn.Linear(bit, 512), nn.ReLU(inplace=True), nn.Linear(512, 1),
                                      nn.Flatten(0))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight)
                nn.init.zeros_(m.bias)

