"""Ways to host the Algorithm 1 worker loop (:func:`qa3c_qiskit.a3c.run_worker`)."""
