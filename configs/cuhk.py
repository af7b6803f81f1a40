"""CUHK-SYSU with the reference hyper-parameters (20 epochs, LR ×0.1 at epoch 16).

python main.py --config configs/cuhk.py --workdir runs/cuhk --config.data.root=/path/to/CUHK-SYSU
"""

from configs import default


def get_config():
    c = default.get_config()
    c.data.dataset = "cuhk_sysu"
    c.solver.max_epochs = 20
    c.model.oim.cq_size = 5000
    c.eval.cbgm_k1 = 10
    c.eval.cbgm_k2 = 3
    return c
