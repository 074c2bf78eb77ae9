# The tiny default recipe: `python train.py` with no config file runs this.
# A 5M-parameter Z2all (3M without embeddings) on the demo corpus (the Python standard library: code and its docstrings),
# sized to finish within 4 minutes on 2 idle CPU cores, data build included (bench/RESULTS.md). data_dir = "" builds the demo data on first use.
out_dir = "out/default"
data_dir = ""
tokenizer_dir = ""

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
