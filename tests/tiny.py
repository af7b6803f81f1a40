"""A tiny synthetic configuration shared by the model/training tests (seconds on a CPU)."""

from configs import synthetic


def tiny_config(max_steps: int = 2):
    c = synthetic.get_config()
    c.data.synthetic.num_train_ids = 6
    c.data.synthetic.num_test_ids = 4
    c.data.synthetic.num_train_images = 12
    c.data.synthetic.num_gallery_images = 10
    c.data.synthetic.image_size = (96, 160)
    c.data.synthetic.gallery_size = 8
    c.data.synthetic.extra_gallery_sizes = ()
    c.data.synthetic.portrait_fraction = 0.0
    c.data.min_size = 96
    c.data.max_size = 160
    c.data.batch_size = 2
    c.data.eval_batch_size = 2
    c.data.num_workers = 1
    c.model.backbone.width = 8
    c.model.emb_dim = 16
    c.model.rpn.pre_nms_topn_train = 200
    c.model.rpn.post_nms_topn_train = 50
    c.model.rpn.pre_nms_topn_test = 200
    c.model.rpn.post_nms_topn_test = 30
    c.model.rpn.batch_size_train = 32
    c.model.roi_head.batch_size_train = 16
    c.model.roi_head.pooled_size = 6
    c.model.roi_head.detections_per_image_test = 30
    c.model.roi_head.stage2_buckets = (8, 30)
    c.model.oim.cq_size = 20
    c.solver.max_epochs = 2
    c.solver.max_steps = max_steps
    c.solver.base_lr = 0.01
    c.log_every = 1
    c.eval.max_queries = 3
    c.eval.mode = "train"
    return c


def get_config(max_steps: str = "2"):
    """For ``main.py --config tests/tiny.py:STEPS`` (the subprocess tests)."""
    return tiny_config(int(max_steps))
