# The seed 1.25B shape (llm-zero2all): hidden 2048, 22 layers, 32 heads, 8 KV heads, FFN 5632, vocab 64320, seq 2048.
# Launch: torchrun --nproc_per_node=8 train.py configs/z2all_1b.py --data_dir=DIR --tokenizer_dir=DIR
out_dir = "out/z2all_1b"

vocab_size = 64320
hidden_dim = 2048
n_layers = 22
n_heads = 32
n_kv_heads = 8
intermediate_size = 5632
max_seq_len = 2048
rope_theta = 10000.0
rms_norm_eps = 1e-5
initializer_range = 0.02
tie_word_embeddings = False
residual_in_fp32 = True

dtype = "bfloat16"
batch_size = 8
gradient_accumulation_steps = 32  # across all ranks: 8 × 2048 × 32 = 524k tokens per step
max_iters = 100000
eval_interval = 1000
eval_iters = 50
log_interval = 10
save_interval = 1000

learning_rate = 3e-4
min_lr = 3e-5
warmup_iters = 2000
weight_decay = 0.1
beta1 = 0.9
beta2 = 0.95
grad_clip = 1.0
