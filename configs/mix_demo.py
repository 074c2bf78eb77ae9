# The data-mixture demo: `python train.py configs/mix_demo.py` trains the tiny default model on the demo corpus as two
# sources, its Python code and its English prose (the docstrings and comments), 70/30, then anneals on prose for the
# last 100 steps. demo:code and demo:prose are built from the demo corpus on first use (data/demo/mix/).
# See the plan first: python train.py configs/mix_demo.py --dry_run
out_dir = "out/mix_demo"
data_mix = "code:0.7:demo:code,prose:0.3:demo:prose"
data_stages = "300:code:0.3,prose:0.7"

vocab_size = 4096
hidden_dim = 256
n_layers = 4
n_heads = 4
n_kv_heads = 2
max_seq_len = 256
multiple_of = 64

batch_size = 8
gradient_accumulation_steps = 1
max_iters = 400
eval_interval = 50
eval_iters = 4
log_interval = 10
save_interval = 100

learning_rate = 2e-3
min_lr = 2e-4
warmup_iters = 20
weight_decay = 0.1
grad_clip = 1.0
