# A ~141M-parameter model on the demo corpus for the FP8 loss comparison (bench/RESULTS.md, "FP8 training"):
#   python train.py configs/fp8_150m.py --out_dir=out/fp8_150m_bf16
#   python train.py configs/fp8_150m.py --fp8=rowwise --out_dir=out/fp8_150m_fp8
# The same seed and data order for both; bench/fp8_loss_plot.py draws the two validation curves.
out_dir = "out/fp8_150m"

vocab_size = 4096
hidden_dim = 1024
n_layers = 12
n_heads = 16
n_kv_heads = 4
max_seq_len = 1024

batch_size = 16
gradient_accumulation_steps = 1  # 16 x 1024 = 16k tokens per step
max_iters = 1200
eval_interval = 100
eval_iters = 8
log_interval = 50
save_interval = 1200
sample_tokens = 0

learning_rate = 1e-3
min_lr = 1e-4
warmup_iters = 100
weight_decay = 0.1
grad_clip = 1.0
