"""Every configuration field of seqnet-jax, with the reference (CUHK-SYSU) defaults.

Dataset configs (cuhk.py, prw.py, synthetic.py) call ``get_config()`` and override a few fields.
Run:  python main.py --config configs/cuhk.py --workdir runs/cuhk --config.data.root=/data/CUHK-SYSU
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 1  # seeds parameter init, data order, flips and RoI/anchor sampling

    # -- data --------------------------------------------------------------------------------
    c.data = d = ml_collections.ConfigDict()
    d.dataset = "cuhk_sysu"  # one of: cuhk_sysu, prw, custom (our format, README), synthetic
    d.root = ""  # unpacked official folder (cuhk_sysu / prw); custom: folder of annotations.json
    d.tfds_data_dir = ""  # if set: prepare the dataset once there with TFDS and read it from it
    d.min_size = 900  # resize: shorter side target (§2.2)
    d.max_size = 1500  # resize: longer side cap
    d.buckets = ()  # padded (H, W) canvases; () = landscape/portrait/square from min/max size
    d.max_boxes = 64  # GT boxes per image after padding (error if an image has more)
    d.batch_size = 5  # training images per step (the reference's batch)
    d.eval_batch_size = 1  # images per inference call
    d.num_workers = 4  # loader threads
    d.flip_prob = 0.5  # horizontal flip probability in training
    d.group_by_aspect_ratio = False  # batch portrait with portrait images (reference: False)
    d.skip_bad_images = False  # skip (and count) unreadable images instead of failing
    d.synthetic = ml_collections.ConfigDict()  # arguments of make_synthetic_dataset (synthetic)
    d.custom = ml_collections.ConfigDict()  # data.dataset=custom (seqnet_jax/data/custom.py)
    d.custom.protocol_seed = 0  # seeds the derived queries and TestG galleries (no 'queries')
    d.custom.gallery_sizes = (50, 100)  # derived TestG{N} protocols (besides 'all', cross-camera)
    d.custom.validate = True  # run the validator first: errors stop, warnings are logged
    d.custom.check_images = "header"  # validator image check: none | header (size) | decode

    # -- model -------------------------------------------------------------------------------
    c.model = m = ml_collections.ConfigDict()
    m.compute_dtype = "float32"  # float32 or bfloat16 (params, losses and OIM stay float32)
    m.backbone = ml_collections.ConfigDict()
    m.backbone.depth = 50  # ResNet depth: 18, 34, 50 (reference) or 101
    m.backbone.width = 64  # channels of the first stage (64 = torchvision)
    m.emb_dim = 256  # re-id embedding size (NAE 128 + 128)
    m.rpn = ml_collections.ConfigDict()
    m.rpn.anchor_sizes = (32, 64, 128, 256, 512)
    m.rpn.aspect_ratios = (0.5, 1.0, 2.0)
    m.rpn.nms_thresh = 0.7
    m.rpn.batch_size_train = 256  # anchors sampled per image
    m.rpn.pos_frac_train = 0.5
    m.rpn.pos_thresh_train = 0.7
    m.rpn.neg_thresh_train = 0.3
    m.rpn.pre_nms_topn_train = 12000
    m.rpn.pre_nms_topn_test = 6000
    m.rpn.post_nms_topn_train = 2000
    m.rpn.post_nms_topn_test = 300
    m.rpn.nms_processes = 5  # training RPN NMS of a batch in N worker processes; 0: threads
    m.roi_head = ml_collections.ConfigDict()
    m.roi_head.bn_neck = True
    m.roi_head.pooled_size = 14  # RoIAlign output size (reference: 14)
    # RoIAlign: "gather" (low memory at 900x1500) or "matmul" (separable matrix products, same
    # values; much faster on CPUs but its (B, R, H, S, C) temporaries cost GBs at full size)
    m.roi_head.roi_align_impl = "gather"
    m.roi_head.batch_size_train = 128  # RoIs sampled per image (both stages)
    m.roi_head.pos_frac_train = 0.5
    m.roi_head.pos_thresh_train = 0.5
    m.roi_head.neg_thresh_train = 0.5
    m.roi_head.score_thresh_test = 0.5  # strict '>' in both test stages
    m.roi_head.nms_thresh_test = 0.4  # first test stage (the second uses 0.5, §2.9)
    m.roi_head.nms_thresh_test_2 = 0.5
    m.roi_head.detections_per_image_test = 300
    m.roi_head.stage2_buckets = (16, 32, 64, 128, 300)  # padded box counts for the 2nd stage
    m.oim = ml_collections.ConfigDict()
    m.oim.lut_size = -1  # -1 = number of labeled training identities in the data
    m.oim.cq_size = 5000
    m.oim.momentum = 0.5
    m.oim.scalar = 30.0

    # -- initialisation ----------------------------------------------------------------------
    c.init = ml_collections.ConfigDict()
    c.init.imagenet_weights = ""  # torchvision resnet50 state-dict file ('' = from scratch)
    c.init.reference_checkpoint = ""  # released PyTorch SeqNet .pth to import (evaluation)

    # -- solver ------------------------------------------------------------------------------
    c.solver = s = ml_collections.ConfigDict()
    s.max_epochs = 20
    s.base_lr = 0.003
    s.warmup_factor = 0.001  # linear warm-up over epoch 0 from base_lr * warmup_factor
    s.lr_decay_milestones = (16,)  # epochs at which the LR is multiplied by gamma
    s.gamma = 0.1
    s.weight_decay = 0.0005
    s.sgd_momentum = 0.9
    s.clip_gradients = 10.0  # global-norm clip; <= 0 disables
    s.lw_rpn_reg = 1.0
    s.lw_rpn_cls = 1.0
    s.lw_proposal_reg = 10.0
    s.lw_proposal_cls = 1.0
    s.lw_box_reg = 1.0
    s.lw_box_cls = 1.0
    s.lw_box_reid = 1.0
    s.max_steps = -1  # stop after this many steps in total (-1 = run all epochs); for smoke runs

    # -- evaluation --------------------------------------------------------------------------
    c.eval = e = ml_collections.ConfigDict()
    e.mode = "train_and_eval"  # train_and_eval | train | eval | search (see the search section)
    e.period = 1  # evaluate every N epochs (and after the last); 0 = only after the last
    e.use_gt = False  # gallery features from GT boxes (upper bound)
    e.use_cbgm = True  # report with and without CBGM
    e.cbgm_k1 = -1  # CBGM: top-k1 gallery detections (-1: the dataset's, CUHK-SYSU 10, PRW 30)
    e.cbgm_k2 = -1  # CBGM: query-image context detections (-1: the dataset's, CUHK-SYSU 3, PRW 4)
    e.checkpoint = ""  # eval mode: checkpoint step dir or '' = latest in workdir
    e.max_queries = -1  # evaluate only the first N queries (-1 = all)

    # -- search (eval.mode=search: find one person in your own photos and videos) -------------
    c.search = sr = ml_collections.ConfigDict()
    sr.query = ""  # query image file
    sr.query_box = ""  # 'x1,y1,x2,y2' of the person in the query image (pixels); '' = whole image
    sr.gallery = ""  # folder of images and/or videos (searched recursively), or one image/video
    sr.output = ""  # output folder (results.json, overview.png, index.html); '' = WORKDIR/search
    sr.index = ""  # gallery index folder, re-used by later queries; '' = OUTPUT/gallery_index
    sr.video_fps = 1.0  # video frames sampled per second (0 = every frame)
    sr.top_k = 10  # best matches shown in overview.png, index.html and the log
    sr.annotate = 50  # annotated gallery frames written, those with the best matches (-1 = all)
    sr.cbgm = False  # re-rank with CBGM, the query image's other people as context (§6.4)
    sr.cbgm_k1 = 10  # CBGM: best detections (over the whole gallery) whose frames are re-ranked
    sr.cbgm_k2 = 3  # CBGM: query-side nodes (the query + the k2-1 most confident other people)
    sr.batch_size = 4  # gallery frames per model call (larger: faster on a GPU, more memory)
    sr.jax_cache = True  # keep compiled programs in INDEX/jax_cache: later searches skip compiling

    # -- several processes (GPUs / machines; README "Several GPUs and several machines") ------
    c.distributed = dist = ml_collections.ConfigDict()
    dist.coordinator = ""  # HOST:PORT of process 0; '' = one process; 'auto' = detect (SLURM, MPI)
    dist.num_processes = 1  # processes in the run (each feeds data.batch_size / N images)
    dist.process_id = 0  # this process, 0..num_processes-1 (the only field that may differ)
    dist.init_timeout_s = 300  # wait this long for the coordinator and every process to connect
    dist.heartbeat_timeout_s = 60  # a lost process stops the others within this time

    # -- logging / checkpoints ---------------------------------------------------------------
    c.log_every = 10  # steps between console/TensorBoard logs
    c.checkpoint_every_steps = 0  # extra mid-epoch checkpoints (0 = only at epoch ends)
    c.keep_checkpoints = 3
    return c
