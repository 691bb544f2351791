default_scope = 'coprs'
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'),
)
vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='Visualizer', vis_backends=vis_backends, name='visualizer')
# mmengine's, except that a key no iteration updated since the last line is left out (the
# warm-up's loss_lm would repeat in every GRPO line; coprs.engine.FreshLogProcessor)
log_processor = dict(type='FreshLogProcessor', by_epoch=False, window_size=20)
log_level = 'INFO'
load_from = None
resume = False
randomness = dict(seed=0)
# DDP that also runs on CPU (gloo) and skips non-finite steps on every rank together
model_wrapper_cfg = dict(type='coprs.CoprsDistributedDataParallel', find_unused_parameters=True)
# (scoped name: the Runner looks wrappers up in mmengine's root registry)
