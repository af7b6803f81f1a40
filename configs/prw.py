"""PRW with the reference hyper-parameters (18 epochs, LR ×0.1 at epoch 16, CQ 500).

python main.py --config configs/prw.py --workdir runs/prw --config.data.root=/path/to/PRW
"""

from configs import default


def get_config():
    c = default.get_config()
    c.data.dataset = "prw"
    c.solver.max_epochs = 18
    c.model.oim.cq_size = 500
    c.eval.cbgm_k1 = 30
    c.eval.cbgm_k2 = 4
    return c
