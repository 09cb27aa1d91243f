module kubeipvs.lab/modclient

go 1.22
