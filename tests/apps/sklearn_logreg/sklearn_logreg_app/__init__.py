"""sklearn-logreg-app: federated logistic regression with scikit-learn."""
