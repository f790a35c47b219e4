"""Self-training rounds inside `cotdistill run` (STaR / ReST-EM): a generator samples the
training problems, the run's filter keeps the verified traces, a student trains on them."""
