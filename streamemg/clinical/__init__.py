"""The clinical model's data side: recording readers, data sets, training and evaluation."""
